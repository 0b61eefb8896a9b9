#!/usr/bin/env bash
# Start or stop the fleet's supervisord and everything under it.
#   scripts/run_fleet.sh start | stop
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
CTL=("$VENV/bin/supervisorctl" -c conf/supervisord.conf)
DEMO=build/demo

running() { [ -S run/supervisor.sock ] && "${CTL[@]}" pid >/dev/null 2>&1; }

demo_footage() {
  # Two cameras with different vehicles (disjoint brands), rendered once and kept.
  mkdir -p "$DEMO"
  local pids=()
  [ -f "$DEMO/cam-001.mp4" ] || { "$VENV/bin/python" -m detector_worker.synthetic.video "$DEMO/cam-001.mp4" \
      --seed 101 --seconds 90 --brands Aurex,Borvik,Castell,Delmar & pids+=($!); }
  [ -f "$DEMO/cam-002.mp4" ] || { "$VENV/bin/python" -m detector_worker.synthetic.video "$DEMO/cam-002.mp4" \
      --seed 202 --seconds 90 --brands Elvora,Fenwick,Gantry,Hollis & pids+=($!); }
  for p in "${pids[@]}"; do wait "$p"; done
}

demo_database() {
  # The stand-in archive writes to database "inference" on the local PostgreSQL (as the backend's
  # archives do); create it when the server answers. Without one, results wait in the workers' queues.
  "$VENV/bin/python" - <<'PY' || true
import psycopg2
try:
    conn = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=2)
except psycopg2.Error as err:
    print(f"fleet: no local PostgreSQL ({str(err).strip().splitlines()[0]}); results wait until one answers")
    raise SystemExit(0)
conn.autocommit = True
with conn.cursor() as cur:
    cur.execute("SELECT 1 FROM pg_database WHERE datname = 'inference'")
    if cur.fetchone() is None:
        cur.execute("CREATE DATABASE inference")
        print("fleet: created database 'inference' for the demo's results")
PY
}

start() {
  mkdir -p run logs conf/supervisord.d
  chmod 0700 run
  # conf/fleet.d/events.conf comes from the gateway's own renderer (a no-op when it is up to date)
  "$VENV/bin/python" scripts/render_fleet_conf.py
  demo_footage
  demo_database
  if running; then
    "${CTL[@]}" update
  else
    "$VENV/bin/supervisord" -c conf/supervisord.conf
  fi
  for _ in $(seq 50); do
    "${CTL[@]}" status demo-rtsp 2>/dev/null | grep -q RUNNING && break
    sleep 0.2
  done
  "${CTL[@]}" status || true
  cat <<MSG

The fleet is up.
  dashboard:         http://127.0.0.1:8001/ui/     (live view, states, logs, start/stop; docs/operations.md)
  backend WebSocket: ws://127.0.0.1:8001/        (watch the whole loop: make demo)
  cameras:           curl http://127.0.0.1:8001/cameras
  metrics:           curl http://127.0.0.1:8001/metrics
  a snapshot:        curl -o cam-001.jpg http://127.0.0.1:8001/cameras/cam-001/snapshot
  demo cameras:      rtsp://127.0.0.1:8554/cam-001  rtsp://127.0.0.1:8554/cam-002  (cameras.yaml)
  operator:          $VENV/bin/supervisorctl -c conf/supervisord.conf status|start|stop|restart|tail camera-cam-001
  logs:              logs/detector_worker_main.log (gateway), logs/detector_worker_camera_<camera>.log
  stop it all:       make stop
MSG
}

stop() {
  if ! running; then
    echo "fleet: not running"
    return 0
  fi
  local pid
  pid=$(cat run/supervisord.pid 2>/dev/null || true)
  # Stop all programs at once first: supervisord's own shutdown stops them one by one.
  "${CTL[@]}" stop all >/dev/null 2>&1 || true
  "${CTL[@]}" shutdown >/dev/null
  for _ in $(seq 100); do
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "fleet: stopped"
}

reload() {
  running || { echo "fleet: not running (make run)"; exit 1; }
  "${CTL[@]}" signal HUP gateway >/dev/null && echo "fleet: gateway re-reads cameras.yaml and applies the difference"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  reload) reload ;;
  *) echo "usage: $0 start|stop|reload" >&2; exit 2 ;;
esac
