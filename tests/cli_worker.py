"""Run the edgekd CLI with the arguments in $EDGEKD_CLI_ARGS (a JSON list): lets tests launch it under torchrun,
whose own argument parser would otherwise swallow options such as --n."""

import json
import os
import sys

from edgekd.cli import main

sys.exit(main(json.loads(os.environ["EDGEKD_CLI_ARGS"])))
