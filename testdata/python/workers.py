# Python threads for tests/real_programs.rs, each doing one known thing:
#
#   workers.py PROGRESS_FILE
#
# sleeper  sleeps in time.sleep() (for an hour at a time: a thread that
#          wakes up often would be found waiting for the interpreter lock)
# waiter   blocks acquiring a lock nobody releases
# worker   computes without pause, writing how many rounds it has done to
#          PROGRESS_FILE (so the test can see it keep working)
# main     sleeps in time.sleep()
#
# Prints "ready pid=P sleeper=TID waiter=TID worker=TID" (kernel thread ids)
# once every thread runs.
import os
import sys
import threading
import time

progress_path = sys.argv[1]
never_released = threading.Lock()
never_released.acquire()
started = {}
all_started = threading.Barrier(4)


def sleeper():
    started["sleeper"] = threading.get_native_id()
    all_started.wait()
    while True:
        time.sleep(3600)


def waiter():
    started["waiter"] = threading.get_native_id()
    all_started.wait()
    never_released.acquire()


def worker():
    started["worker"] = threading.get_native_id()
    all_started.wait()
    rounds = 0
    while True:
        rounds += 1
        sum(range(2000))
        if rounds % 100 == 0:
            with open(progress_path + ".tmp", "w") as f:
                f.write(str(rounds))
            os.replace(progress_path + ".tmp", progress_path)


for body in (sleeper, waiter, worker):
    threading.Thread(target=body, name=body.__name__, daemon=True).start()
all_started.wait()
print(
    "ready pid=%d sleeper=%d waiter=%d worker=%d"
    % (os.getpid(), started["sleeper"], started["waiter"], started["worker"]),
    flush=True,
)
while True:
    time.sleep(3600)
