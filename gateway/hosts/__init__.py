"""Several worker hosts, each with its own supervisord: settings, placement, the agent, the fleet.

- `settings`: the `hosts:`/`remote:` sections of the gateway's settings
- `placement`: which host runs which camera (pure: capacity, labels, stickiness, draining)
- `agent`: the `fleet.*` XML-RPC namespace a worker host's supervisord loads (writes specs/programs)
- `fleet`: `HostFleet`, the gateway's supervisord port over many hosts (health, failover, epochs)
"""
