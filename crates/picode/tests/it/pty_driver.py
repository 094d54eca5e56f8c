# Drives a program through a pseudo-terminal, like a person at a keyboard.
#
# usage: python3 pty_driver.py PROGRAM STEPS_JSON [ARGS...]
# STEPS_JSON is a list of ["expect", text] (wait until text appears after the
# previous match), ["send", line] (type a line and Enter) and ["ctrl_c"].
# Prints the whole transcript; exits 1 with the reason when an expectation
# times out, and with the program's exit status otherwise.
import json
import os
import pty
import select
import sys
import time

program, steps = sys.argv[1], json.loads(sys.argv[2])
pid, fd = pty.fork()
if pid == 0:
    os.execv(program, [program] + sys.argv[3:])

transcript = b""
pos = 0


def pump(timeout):
    global transcript
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return True
    try:
        data = os.read(fd, 4096)
    except OSError:
        return False
    if not data:
        return False
    transcript += data
    return True


def fail(reason):
    sys.stdout.write(transcript.decode("utf-8", "replace"))
    sys.stdout.write("\n--- pty driver: " + reason + "\n")
    sys.stdout.flush()
    os.kill(pid, 9)
    sys.exit(1)


for step in steps:
    kind = step[0]
    if kind == "expect":
        needle = step[1].encode()
        deadline = time.time() + 30
        while transcript.find(needle, pos) < 0:
            if time.time() > deadline or not pump(0.1):
                if transcript.find(needle, pos) >= 0:
                    break
                fail("timed out waiting for %r" % step[1])
        pos = transcript.find(needle, pos) + len(needle)
    elif kind == "send":
        os.write(fd, step[1].encode() + b"\r")
    elif kind == "ctrl_c":
        os.write(fd, b"\x03")

deadline = time.time() + 30
status = None
while time.time() < deadline:
    pump(0.1)
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
else:
    fail("the program did not exit")
while pump(0.05):
    if not select.select([fd], [], [], 0.05)[0]:
        break
sys.stdout.write(transcript.decode("utf-8", "replace"))
sys.stdout.flush()
sys.exit(os.waitstatus_to_exitcode(status))
