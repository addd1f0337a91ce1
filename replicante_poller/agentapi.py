"""The paths of the agent API ("unstable", DESIGN section 1) of both agent generations: one
home for the poller, the dispatcher, the gateway and the simulator.

Legacy agents (replicante-io/agents) and replisdk agents (`../shared/agent-api-replisdk.md`)
share the `/api/unstable` prefix and the two action list paths, nothing else.
"""
from __future__ import annotations

LEGACY, REPLISDK = "legacy", "replisdk"
GENERATIONS = (LEGACY, REPLISDK)
AUTO = "auto"  # the `api` setting that learns each agent's generation

API = "/api/unstable"
# legacy
AGENT_INFO = API + "/info/agent"
DATASTORE_INFO = API + "/info/datastore"
SHARDS = API + "/shards"
ACTIONS_INDEX = API + "/actions"  # actions disabled: {"actions": false}; (enabled: ACTIONS_PREFIX gives true)
ACTIONS_PREFIX = API + "/actions/"
SCHEDULE_PREFIX = ACTIONS_PREFIX + "schedule/"  # + the action kind
ACTIONS_QUEUE = ACTIONS_PREFIX + "queue"  # both generations (replisdk: {"actions": [...]})
ACTIONS_FINISHED = ACTIONS_PREFIX + "finished"  # both generations (replisdk: {"actions": [...]})
ACTION_INFO_PREFIX = ACTIONS_PREFIX + "info/"  # + the action id
# replisdk
NODE_INFO = API + "/info/node"
STORE_INFO = API + "/info/store"
SHARDS_INFO = API + "/info/shards"
ACTION = API + "/action"  # POST schedules; GET ACTION + "/" + id tracks
ACTION_PREFIX = ACTION + "/"  # + the action id
