"""pip (`python3 scripts/pip-for-image.py download ...`), with the environment markers of another Python: the base
image's, as JSON in PIP_MARKER_ENVIRONMENT (scripts/common.sh, image_wheels, reads them in the image).

`pip download --python-version X --platform ...` picks wheels for the target's tags and Requires-Python, but
evaluates the requirements' markers on the host's Python: a dependency such as redis's
`async-timeout; python_full_version < "3.11.3"` is left out on a host with Python 3.11.7 and then missing in an
image with Python 3.11.2. Here every marker is evaluated with the image's values instead."""

import json
import os
import runpy
import sys

from pip._vendor.packaging import markers

TARGET = json.loads(os.environ["PIP_MARKER_ENVIRONMENT"])
host_environment = markers.default_environment
markers.default_environment = lambda: {**host_environment(), **TARGET}

sys.argv = ["pip", *sys.argv[1:]]
runpy.run_module("pip", run_name="__main__", alter_sys=True)
