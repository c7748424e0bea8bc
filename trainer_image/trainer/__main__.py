import logging
import os
import sys

from trainer.main import main

code = main()
# The outcome is recorded and the store closed: leave without interpreter teardown, during
# which native threads (torch's pools, the storage client's) have been seen to abort the
# process and turn the documented exit code into SIGABRT.
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
