-- Where the control service reaches a host agent's stream relay (agents whose VMMs are not on
-- this machine, e.g. inside a VM), and the bearer key the agent generated for it. NULL: the
-- agent runs on the control service's machine and its VMM sockets are used directly.
ALTER TABLE hosts ADD COLUMN relay_url TEXT;
ALTER TABLE hosts ADD COLUMN relay_key TEXT;
