#!/bin/sh
# The seed's sample script, answering its documented example:
# POST /run-script {"script_name": "sample_script.sh"} -> "This is a sample script!"
echo "This is a sample script!"
