"""The gateway's bridge to supervisord: one `[program:]` file per camera, applied over XML-RPC.

- `programs`: validated, atomically written program files (`ProgramSpec`, `render`, `write_programs`) and
  the event listener's section (`render_eventlistener`)
- `rpc`: async XML-RPC client (`SupervisorClient`, `ProcessInfo`, `SupervisorError`, `SupervisorUnavailable`)
- `bridge`: `SupervisorBridge.apply()` converges supervisord on the desired programs
- `events`: the `[eventlistener:]` that pushes PROCESS_STATE events to the gateway over ZeroMQ
"""
