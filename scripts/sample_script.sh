#!/bin/sh
# The seed's sample script: greets its first argument.
echo "Hello, ${1:-world}!"
