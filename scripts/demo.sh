#!/usr/bin/env bash
# The demo: kill -9 the primary of a fault-tolerant pair under client
# traffic, and check that the client never noticed more than a pause. Driven
# by the ftctl CLI alone. Build ftctl and the guest image (kernel from
# Debian's linux-source, cached; ~8 minutes the first time), then, on a KVM
# host that runs guest ring-0 code at speed (a nested host under QEMU when
# this machine has none):
#
#   ftctl net serve      the virtual switch, forwarding 127.0.0.1:7000 to the guest
#   ftctl disk create    an ext4 disk for the guest's kv store
#   ftctl run --role backup  --listen unix:... --arbiter DIR --pair demo
#   ftctl run --role primary --peer unix:...   --arbiter DIR --pair demo
#   ftctl testbench kvclient --history ...     4 clients of checked PUT/GET/ECHO for 40 s
#
# and, 10-25 s (at random) into the client's run, kill -9 the primary. The
# backup replays what it received, claims the pair's arbiter record
# (generation 0 -> 1), goes live and takes over the guest's MAC on the
# switch; the clients' TCP connections carry on. Checks: no client error,
# the recorded history is linearizable (porcupine), every acknowledged PUT
# reads back, the primary is gone and the backup live, the generation went
# up; then prints the failover timeline in milliseconds. Fails (non-zero)
# if anything is off.
#
# FTVM_DEMO_CLIENT sets how long the client runs (default 40s);
# FTVM_DEMO_KILL_AFTER the seconds from the client's start to the kill
# (default: random, 10-25).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
client_duration=${FTVM_DEMO_CLIENT:-40s}
kill_after=${FTVM_DEMO_KILL_AFTER:-$((10 + RANDOM % 16))}

go build -o out/ftctl ./cmd/ftctl

echo "== ftctl image build"
out/ftctl image build --out out/image
out/ftctl image inspect out/image

# ftctl disk create --mkfs ext4 runs the host's mkfs.ext4; the nested host
# has busybox only, so it gets this machine's (copied in with its libraries).
mkfs=$(PATH="$PATH:/usr/sbin:/sbin" command -v mkfs.ext4 || true)
if [[ -z $mkfs ]]; then
  echo "demo: mkfs.ext4 not found; install e2fsprogs (scripts/setup.sh does)" >&2
  exit 1
fi
# The timeline needs the kill's time in nanoseconds; busybox's date has
# seconds only, so the nested host gets this machine's date.
cp "$(command -v date)" out/demo-date

# The pair, inside the KVM host. POSIX sh: in a nested host it runs under
# this machine's sh with busybox for the rest.
# shellcheck disable=SC2016 # expanded by the inner shell
pair='
set -u
ftctl=$1 image=$2 client_duration=$3 kill_after=$4 date=$5
t0=$(date +%s)
w=$(mktemp -d /tmp/ftvm-demo.XXXXXX) || exit 1
net= backup= backup2= primary= client= shown=
say() { printf "\n== [%3ss] %s\n" "$(( $(date +%s) - t0 ))" "$*"; }
cleanup() {
  for p in $client $primary $backup $backup2 $net; do kill -TERM "$p" 2>/dev/null; done
  sleep 1
  rm -rf "$w"
}
trap cleanup EXIT
fail() {
  say "FAILED: $*"
  for f in net primary backup backup2 client; do echo "--- $f log:"; tail -n 40 "$w/$f.log" 2>/dev/null; done
  echo "--- primary guest console (last lines):"; tail -n 20 "$w/console.log" 2>/dev/null
  exit 1
}
alive() { kill -0 "$1" 2>/dev/null; }
# show NAME: a fifo whose lines are appended to $w/NAME.log and printed as
# "  NAME | line", with slog'\''s "time=... level=INFO msg=" cut off.
show() {
  mkfifo "$w/$1.fifo" || exit 1
  awk -v who="$1" -v file="$w/$1.log" '\''{
    print > file; fflush(file)
    line = $0
    if (match(line, /^time=[^ ]+ level=[A-Z]+ msg=/)) {
      level = substr(line, 1, RLENGTH); sub(/^time=[^ ]+ level=/, "", level); sub(/ msg=$/, "", level)
      line = substr(line, RLENGTH + 1)
      if (substr(line, 1, 1) == "\"") { line = substr(line, 2); i = index(line, "\""); if (i) line = substr(line, 1, i - 1) substr(line, i + 1) }
      if (level != "INFO") line = level ": " line
    }
    printf "  %-7s | %s\n", who, line; fflush()
  }'\'' < "$w/$1.fifo" &
  shown=$!
}
# waitexit PID SECONDS: wait for a child, at most SECONDS; its status in $status.
waitexit() {
  n=0
  while alive "$1"; do
    n=$((n + 1)); [ "$n" -gt "$2" ] && return 1
    sleep 1
  done
  wait "$1"; status=$?
}
waitfor() { # FILE PATTERN SECONDS PID...: wait for PATTERN in FILE while the PIDs live
  file=$1 pattern=$2 secs=$3; shift 3
  n=0
  until grep -q "$pattern" "$file" 2>/dev/null; do
    for p in "$@"; do alive "$p" || fail "a process ended before \"$pattern\" appeared in $file"; done
    n=$((n + 1)); [ "$n" -gt "$secs" ] && fail "no \"$pattern\" in $file within ${secs}s"
    sleep 1
  done
}

say "ftctl net serve: the virtual switch; 127.0.0.1:7000 forwards to the guest'\''s kv port 192.168.127.2:7000"
show net; net_shown=$shown
"$ftctl" net serve --socket "$w/net.sock" --forward 127.0.0.1:7000=192.168.127.2:7000 > "$w/net.fifo" 2>&1 &
net=$!
waitfor "$w/net.log" "switch listening" 15 "$net"

say "ftctl disk create data --size 64M --mkfs ext4: the disk the guest'\''s kv store logs to"
"$ftctl" disk create data --size 64M --mkfs ext4 --storage "$w/storage" | grep -E "^(created|size|filesystem)" || fail "disk create"

machine="--image $image --mem 128 --net $w/net.sock --ip 192.168.127.2/24 --disk data --storage $w/storage --append ftvm.workload=kv --peer-timeout 10s --status-every 20s --arbiter $w/arbiter --pair demo"
say "backup:  ftctl run $machine --role backup --listen unix:$w/log.sock --protect-to unix:$w/log2.sock --console none"
show backup; backup_shown=$shown
"$ftctl" run $machine --role backup --listen "unix:$w/log.sock" --protect-to "unix:$w/log2.sock" --console none > "$w/backup.fifo" 2>&1 &
backup=$!
waitfor "$w/backup.log" "backup listening" 30 "$backup"
say "backup2: ftctl run $machine --role backup --listen unix:$w/log2.sock --console none: waits to protect the survivor after the failover"
show backup2; backup2_shown=$shown
"$ftctl" run $machine --role backup --listen "unix:$w/log2.sock" --console none > "$w/backup2.fifo" 2>&1 &
backup2=$!
waitfor "$w/backup2.log" "backup listening" 30 "$backup2"

say "primary: ftctl run (the same machine) --role primary --peer unix:$w/log.sock --console $w/console.log"
show primary; primary_shown=$shown
"$ftctl" run $machine --role primary --peer "unix:$w/log.sock" --console "$w/console.log" > "$w/primary.fifo" 2>&1 &
primary=$!
say "booting Linux on the primary while the backup replays it; waiting for the guest'\''s ready line"
booting=$(date +%s)
waitfor "$w/console.log" "ftvm-guest ready" 240 "$primary" "$backup"
waitfor "$w/console.log" "ftvm-guest kv listening" 60 "$primary" "$backup"
ready=$(( $(date +%s) - booting ))
grep "^ftvm-guest" "$w/console.log" | sed "s/^/  guest   | /"
gen0=$("$ftctl" arbiter show "$w/arbiter" demo) || fail "arbiter show"
echo "  arbiter | $gen0"

say "ftctl testbench kvclient --addr 127.0.0.1:7000 --duration $client_duration --history ...: 4 clients through the forward; kill -9 of the primary ${kill_after}s into their run"
show client; client_shown=$shown
"$ftctl" testbench kvclient --addr 127.0.0.1:7000 --duration "$client_duration" --history "$w/history.jsonl" > "$w/client.fifo" 2>&1 &
client=$!
waitfor "$w/client.log" "the server answered an ECHO" 120 "$client" "$primary" "$backup"
sleep "$kill_after"
alive "$primary" || fail "the primary stopped before the kill"
alive "$backup" || fail "the backup stopped before the kill"

killed_ns=$($date +%s%N)
kill -KILL "$primary"
say "kill -9 of the primary (pid $primary); the backup takes over while the clients wait"
waitexit "$primary" 30 || fail "the primary did not die within 30s of SIGKILL"
primary_status=$status
primary=
waitfor "$w/backup.log" "live: the guest runs on here" 180 "$backup"
say "waiting for the clients to finish, read back every key and check the history"
waitexit "$client" 600 || fail "the kv client did not finish within 600s"
client_status=$status
client=
wait "$client_shown"
alive "$backup" || fail "the backup stopped after going live"
gen1=$("$ftctl" arbiter show "$w/arbiter" demo) || fail "arbiter show"

say "re-protection: the survivor copies its running guest to backup2 and replicates to it"
waitfor "$w/backup.log" "ftctl: protected again" 600 "$backup" "$backup2"
reprotected=$(grep "^ftctl: protected again" "$w/backup.log" | sed "s/^ftctl: protected again: //")
waitfor "$w/backup2.log" "digests matched [1-9]" 300 "$backup" "$backup2"

say "SIGTERM to the backup, now the live side and backup2'\''s primary: it stops the guest and closes backup2'\''s log"
kill -TERM "$backup"
waitexit "$backup" 60 || fail "the backup did not stop within 60s of SIGTERM"
backup_status=$status
backup=
waitexit "$backup2" 60 || fail "backup2 did not stop within 60s of its primary'\''s clean stop"
backup2_status=$status
backup2=
kill -INT "$net" 2>/dev/null; waitexit "$net" 15 || kill -KILL "$net"; net=
wait "$net_shown" "$backup_shown" "$backup2_shown" "$primary_shown"

[ "$client_status" = 0 ] || fail "the kv client exited with status $client_status"
grep -q "^kvclient: errors: 0$" "$w/client.log" || fail "the kv client saw errors"
grep -q "^kvclient: linearizable: yes" "$w/client.log" || fail "the history is not linearizable"
grep -q "^kvclient: read back all [0-9]* keys written" "$w/client.log" || fail "not every acknowledged PUT read back"
[ "$primary_status" = 137 ] || fail "the primary exited with status $primary_status (want 137: SIGKILL)"
live=$(grep "^ftctl: went live at exit" "$w/backup.log") || fail "the backup did not report going live when it stopped"
[ "$backup_status" = 130 ] || fail "the backup exited with status $backup_status after SIGTERM (want 130)"
[ "$backup2_status" = 0 ] || fail "backup2 exited with status $backup2_status after its primary stopped cleanly (want 0)"
case $gen0 in *"generation 0 "*) ;; *) fail "before the kill the record was not at generation 0: $gen0" ;; esac
case $gen1 in *"generation 1 owned"*) ;; *) fail "after the kill the record is not at generation 1: $gen1" ;; esac

# The timeline, in ms after the kill. The history has Unix ns times; the
# slog time stamps of the backup (ms, UTC) place the verdict of its failure
# detector, which its went-live line counts from.
ops=$(grep -c . "$w/history.jsonl")
clientsum=$(grep -E "^kvclient: ([0-9]+ clients, )?[0-9]+ requests" "$w/client.log" | sed "s/^kvclient: //")
longest=$(grep "^kvclient: longest wait" "$w/client.log" | sed "s/^kvclient: longest wait for an answer: //")
verdict=$(grep "^kvclient: linearizable" "$w/client.log" | sed "s/^kvclient: //")
readback=$(grep "^kvclient: read back" "$w/client.log" | sed "s/^kvclient: //")
# The backup logs "live: the guest runs on here" (slog, ms time stamp) as it
# goes live; its went-live line counts from the verdict of its failure detector.
live_at=$(grep "msg=\"live: the guest runs on here\"" "$w/backup.log" | head -n 1 |
  sed -n "s/^time=[0-9-]*T\([0-9]*\):\([0-9]*\):\([0-9.]*\)Z .*/\1 \2 \3/p" |
  awk -v k="$killed_ns" '\''{ t = ($1 * 3600 + $2 * 60 + $3) * 1000; kd = (k / 1e6) % 86400000; printf "%d", t - kd }'\'')
ms() { # the milliseconds of the went-live line'\''s "WHAT +DURATION"
  echo "$live" | sed -En "s/.*$1 \+([0-9.]+)(µs|ms|s)[,;].*/\1 \2/p" |
    awk '\''{ v = $1; if ($2 == "µs") v /= 1000; if ($2 == "s") v *= 1000; printf "%d", v + 0.5 }'\''
}
drained=$(ms "log drained") claimed=$(ms "record claimed \\(generation 1\\)") golive=$(ms "live")
detected=
[ -n "$live_at" ] && [ -n "$golive" ] && detected=$((live_at - golive))
at() { [ -n "$detected" ] && [ -n "$1" ] && printf "~%d" $((detected + $1)); }

# From the history: answers that arrived between the kill and the moment
# the backup went live (released by the primary before it died, still on
# their way), the first answer after that, and the requests in flight at
# the kill (sent before it, answered after it): the pause the clients saw.
set -- $(awk -v k="$killed_ns" -v l="${live_at:-0}" '\''
  BEGIN { l = k + l * 1e6 }
  match($0, /"call_unix_ns":[0-9]+/) { c = substr($0, RSTART + 15, RLENGTH - 15) + 0 }
  match($0, /"return_unix_ns":[0-9]+/) { r = substr($0, RSTART + 17, RLENGTH - 17) + 0
    if (r > k && r <= l) early++
    if (r > l && (best == "" || r < best)) best = r
    if (c <= k && r > k) { n++; if (r - k > w) w = r - k } }
  END { if (best != "") printf "%d %d %d %d", (best - k) / 1e6, n, w / 1e6, early }'\'' "$w/history.jsonl")
first=${1:-} inflight=${2:-0} inflight_ms=${3:-} early=${4:-0}

say "failover works"
echo "  client:   $clientsum"
echo "            $verdict; $readback; no errors"
echo "  longest wait for an answer: $longest"
echo "  arbiter:  before the kill $gen0"
echo "            after           $gen1"
echo "  primary:  killed (exit $primary_status); backup: went live, stopped by SIGTERM (exit $backup_status)"
echo
echo "  timeline after kill -9 of the primary, ms (~: placed by the backup'\''s log time stamp, 1 ms resolution):"
printf "  %8s  kill -9 of the primary\n" 0
printf "  %8s  backup: primary lost (log channel reset)\n" "$(at 0)"
printf "  %8s  backup: log drained       (+%s ms)\n" "$(at "$drained")" "$drained"
printf "  %8s  backup: record claimed    (+%s ms)\n" "$(at "$claimed")" "$claimed"
printf "  %8s  backup: live              (+%s ms)\n" "$(at "$golive")" "$golive"
[ "$early" -gt 0 ] && printf "  %8s  (%d answers arrived before that: released by the primary before it died)\n" "" "$early"
printf "  %8s  first answer to a client after the backup went live\n" "${first:-?}"
[ "$inflight" -gt 0 ] && printf "  %8s  the last of the %d requests in flight at the kill answered: the pause clients saw\n" "$inflight_ms" "$inflight"
echo "  backup: ${live#ftctl: }"
echo
echo "  re-protection: the survivor copied its running guest to backup2 ($reprotected);"
echo "  backup2 replayed it from there with digests matching, and ended cleanly with it (exit 0)"
echo
echo "  The $ops requests of the run, the read-back included, fit one sequential order of a kv store that"
echo "  agrees with when each was sent and answered (porcupine): the clients saw the same store before"
echo "  and after the failover, with nothing acknowledged lost, and a pause instead of an error."
'

echo "== kill -9 of the primary of a fault-tolerant pair under client traffic   ($(out/ftctl testbench kvmhost where))"
out/ftctl testbench kvmhost run --timeout 14m --file "$PWD/out/image" --file "$mkfs" --file "$PWD/out/demo-date" -- \
  sh -c "$pair" demo "$PWD/out/ftctl" "$PWD/out/image" "$client_duration" "$kill_after" "$PWD/out/demo-date"
echo "== demo finished in $((SECONDS - start))s: the backup took over from the killed primary; the clients saw a pause, not an error"
