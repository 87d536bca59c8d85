-- 2026-07-28 agents each bridge saw waiting (bridge/nodes.py, bridge/sessions.py): a
-- sessionless client is reachable for elicitation wherever it holds its
-- `wait_for_messages` call, and that call leaves no fact in the log. One row per agent and
-- bridge, upserted at most every 15 s per agent by that bridge's heartbeat tick, read by
-- the others on theirs. Times are the database clock: `seen_at` when the bridge last saw
-- the agent, `updated_at` when the row was written (what a reader asks for since its last
-- read).
CREATE TABLE lh_modern_presence (
    agent       text        NOT NULL,
    node        text        NOT NULL,
    elicitation boolean     NOT NULL,
    seen_at     timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent, node)
);
CREATE INDEX lh_modern_presence_updated ON lh_modern_presence (updated_at);
