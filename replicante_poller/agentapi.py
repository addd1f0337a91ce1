"""The paths of the agent API ("unstable", DESIGN section 1): one home for the poller, the
dispatcher, the gateway and the simulator."""
from __future__ import annotations

API = "/api/unstable"
AGENT_INFO = API + "/info/agent"
DATASTORE_INFO = API + "/info/datastore"
SHARDS = API + "/shards"
ACTIONS_PREFIX = API + "/actions/"
SCHEDULE_PREFIX = ACTIONS_PREFIX + "schedule/"  # + the action kind
ACTIONS_QUEUE = ACTIONS_PREFIX + "queue"
ACTIONS_FINISHED = ACTIONS_PREFIX + "finished"
ACTION_INFO_PREFIX = ACTIONS_PREFIX + "info/"  # + the action id
