#!/bin/sh
# conmon's "runtime" for a gVisor sub-container (a container that joins an existing sandbox):
#
#   sh holder.sh RUNSC [RUNSC GLOBAL FLAGS...] -- create --bundle B --pid-file P [--console-socket S] ID
#
# runsc gives a sub-container the stdio of the `runsc start` call (not of `runsc create`) and writes the
# sandbox's pid to --pid-file, which is not conmon's child. So this script runs `runsc create` (without
# --pid-file), then starts a background holder and writes the holder's pid to P. The holder keeps conmon's
# stdio pipes open (crirt hands them to `runsc start` through /proc/<holder>/fd), waits on the fifo `start`
# next to P for crirt's word, then waits for the container with `runsc wait` and exits with its exit code,
# which conmon records. Anything but "start" on the fifo ends the holder with 128 (the container never ran).
set -eu
runsc=$1
shift
flags=""
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
    flags="$flags $1"  # crirt passes global flags without white space
    shift
done
[ "$#" -gt 1 ] && [ "$2" = create ] || { echo "holder.sh: unexpected arguments: $*" >&2; exit 2; }
shift
# Keep every argument but "--pid-file P" (rotating them through "$@").
pid_file=""
count=$#
while [ "$count" -gt 0 ]; do
    arg=$1
    shift
    count=$((count - 1))
    if [ "$arg" = --pid-file ] && [ "$count" -gt 0 ]; then
        pid_file=$1
        shift
        count=$((count - 1))
    else
        set -- "$@" "$arg"
    fi
done
[ -n "$pid_file" ] || { echo "holder.sh: no --pid-file" >&2; exit 2; }
for id; do :; done
dir=$(dirname "$pid_file")

# shellcheck disable=SC2086 # the flags are separate words
"$runsc" $flags "$@"

hold() {
    read -r word < "$dir/start" || word=""
    [ "$word" = start ] || exit 128
    # shellcheck disable=SC2086
    result=$("$runsc" $flags wait "$id" 2>>"$dir/wait.log") || exit 255
    code=${result##*\"exitStatus\":}
    code=${code%%[!0-9]*}
    exit "${code:-255}"
}

# A background job of a non-interactive sh reads /dev/null, not our stdin (POSIX), and an explicit redirection
# comes after that: hand it conmon's stdin through fd 3, or the container would never read what attach sends.
exec 3<&0
hold 0<&3 3<&- &
exec 3<&-
echo "$!" > "$pid_file"
