#!/bin/sh
# heron-commands: a command channel for tests on the serial console (stdin). A line
#   heron-run TAG COMMAND...
# runs COMMAND with sh and answers, on the console:
#   heron-out TAG LINE        for each line of its output (stdout and stderr together)
#   heron-done TAG rc=N       when it has ended
# TAG is [A-Za-z0-9_-]+. Commands run side by side: a long ping does not hold up the next one.
# Text before "heron-run" on the same line is ignored, so leftovers typed without a newline do
# not spoil a request.
#
# The terminal's own echo is turned off: the kernel echoes from its receive path, which can put
# the echo between a line another process writes and that line's newline, and a tick or answer
# cut in two is a lost line to the reader on the host. Processes' writes never split each other.
# Other lines (what a person types at the console) are echoed here instead, whole.
run() {
    set -o pipefail
    # stdin from /dev/null: a command must never read the console, where the requests arrive.
    sh -c "$2" </dev/null 2>&1 | while IFS= read -r out || [ -n "$out" ]; do
        printf 'heron-out %s %s\n' "$1" "$out"
    done
    printf 'heron-done %s rc=%s\n' "$1" "$?"
}

stty -echo
cr=$(printf '\r')
while IFS= read -r line; do
    case "$line" in
    *"heron-run "*) ;;
    *)
        printf '%s\n' "$line"
        continue
        ;;
    esac
    request=${line#*heron-run }
    request=${request%"$cr"}
    tag=${request%% *}
    command=${request#"$tag"}
    command=${command# }
    case "$tag" in
    "" | *[!A-Za-z0-9_-]*)
        echo "heron-commands: ignored a request with a bad tag: $line"
        continue
        ;;
    esac
    if [ -z "$command" ]; then
        printf 'heron-done %s rc=127\n' "$tag"
        continue
    fi
    run "$tag" "$command" &
done
echo "heron-commands: the console closed, no more commands"
