"""A real S3 API (moto's server) on a loopback port for the storage tests; exits with its parent.

usage: s3_server.py PORT
"""
import os
import sys
import time

from moto.server import ThreadedMotoServer

port = int(sys.argv[1])
server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
server.start()
parent = os.getppid()
print("ready", flush=True)
while os.getppid() == parent:
    time.sleep(0.5)
server.stop()
