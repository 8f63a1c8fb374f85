#!/bin/sh
# Fails before it ever listens, like a server with a bad configuration.
echo "starting up" 
echo "fatal: model file missing" >&2
exit 3
