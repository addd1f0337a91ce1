// The status pages' script (served same-origin: the pages' CSP is script-src 'self').
// Refreshes the live part (#live) in place every data-refresh seconds, keeping the scroll
// position, the filters (they are the URL) and whatever is typed in the search box; filter
// controls apply at once, without a full reload. Without it the pages work as plain links
// and a form. Nothing is evaluated, and only the server's own page is parsed into the DOM.
(function () {
  "use strict";
  var seconds = Number(document.body.getAttribute("data-refresh")) || 0;
  var form = document.getElementById("filters");
  var stateLine = document.getElementById("refresh-state");
  var pauseButton = document.getElementById("pause");
  var timer = 0, typing = 0, generation = 0, paused = false;

  function say(text, bad) {
    if (!stateLine) return;
    stateLine.textContent = text;
    stateLine.classList.toggle("bad", !!bad);
  }

  function schedule() {
    clearTimeout(timer);
    if (seconds > 0 && !paused) timer = setTimeout(tick, seconds * 1000);
  }

  function selecting() {
    var selection = window.getSelection();
    return selection !== null && !selection.isCollapsed && selection.toString() !== "";
  }

  function tick() {
    // A hidden tab, or someone selecting text to copy it: try again later.
    if (document.hidden || selecting()) return schedule();
    load();
  }

  function load() {
    var mine = ++generation;
    var url = location.pathname + location.search;
    var abort = new AbortController();
    var limit = setTimeout(function () { abort.abort(); }, 15000);
    fetch(url, {cache: "no-store", headers: {"Accept": "text/html"}, signal: abort.signal})
      .then(function (response) {
        return response.text().then(function (text) { return {response: response, text: text}; });
      })
      .then(function (answer) {
        if (mine !== generation) return;  // the filters changed meanwhile: a newer load runs
        var page = new DOMParser().parseFromString(answer.text, "text/html");
        var fresh = page.getElementById("live");
        var live = document.getElementById("live");
        if (!fresh || !live) throw new Error("HTTP " + answer.response.status);
        var x = window.scrollX, y = window.scrollY;
        live.replaceWith(document.adoptNode(fresh));
        window.scrollTo(x, y);
        document.title = page.title;
        var icon = page.querySelector("link[rel=icon]"), ours = document.querySelector("link[rel=icon]");
        if (icon && ours && ours.getAttribute("href") !== icon.getAttribute("href")) {
          ours.setAttribute("href", icon.getAttribute("href"));
        }
        say(paused ? "paused" : "", false);
      })
      .catch(function (error) {
        if (mine !== generation) return;
        var reason = error && error.name === "AbortError" ? "no answer" : (error && error.message) || String(error);
        say("refresh failed at " + new Date().toLocaleTimeString() + " (" + reason + "): showing older data", true);
      })
      .finally(function () {
        clearTimeout(limit);
        if (mine === generation) schedule();
      });
  }

  function formQuery() {
    var params = new URLSearchParams();
    new FormData(form).forEach(function (value, name) {
      if (value !== "") params.append(name, value);
    });
    var text = params.toString();
    return location.pathname + (text ? "?" + text : "");
  }

  function applyFilters() {
    var target = formQuery();
    if (target !== location.pathname + location.search) history.pushState(null, "", target);
    load();
  }

  function syncForm() {
    var params = new URLSearchParams(location.search);
    Array.prototype.forEach.call(form.elements, function (element) {
      if (element.name && element.type !== "hidden") element.value = params.get(element.name) || "";
    });
  }

  if (form) {
    form.addEventListener("change", function (event) {
      if (event.target.tagName === "SELECT") applyFilters();
    });
    form.addEventListener("input", function (event) {
      if (event.target.name !== "q") return;
      clearTimeout(typing);
      typing = setTimeout(applyFilters, 300);
    });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      clearTimeout(typing);
      applyFilters();
    });
    window.addEventListener("popstate", function () {
      syncForm();
      load();
    });
    document.addEventListener("keydown", function (event) {
      var search = form.elements.namedItem("q");
      if (event.key === "/" && search && document.activeElement !== search &&
          !/^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName)) {
        event.preventDefault();
        search.focus();
      }
    });
  }

  if (pauseButton && seconds > 0) {
    pauseButton.hidden = false;
    pauseButton.addEventListener("click", function () {
      paused = !paused;
      pauseButton.textContent = paused ? "Resume" : "Pause";
      say(paused ? "paused" : "", false);
      if (paused) clearTimeout(timer); else load();
    });
  }
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && seconds > 0 && !paused) load();
  });
  schedule();
})();
