#!/bin/sh
# The hello endpoint's script: greets its first argument.
echo "Hello, ${1:-world}!"
