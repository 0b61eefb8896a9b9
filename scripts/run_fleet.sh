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

start() {
  mkdir -p run logs conf/supervisord.d
  chmod 0700 run
  demo_footage
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
  demo cameras:  rtsp://127.0.0.1:8554/cam-001  rtsp://127.0.0.1:8554/cam-002
  operator:      $VENV/bin/supervisorctl -c conf/supervisord.conf status|start|stop|restart|tail <program>
  logs:          logs/ (supervisord.log, demo_rtsp.log, one file per camera)
  stop it all:   make stop
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

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
