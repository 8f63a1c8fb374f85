#!/usr/bin/python3
"""Never listens on $PORT. Writes its pid to the file named by argv[1] (when given)."""
import os
import sys
import time

if len(sys.argv) > 1:
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
print("loading a very large model...", file=sys.stderr, flush=True)
while True:
    time.sleep(3600)
