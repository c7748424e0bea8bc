import logging
import os
import sys

from trainer.interrupt import StopFlag

stop = StopFlag().install()  # before torch loads: a SIGTERM from now on is a clean stop

from trainer.main import main  # noqa: E402 - on purpose after the handler

code = main(stop)
# The outcome is recorded and the store closed: leave without interpreter teardown, during
# which native threads (torch's pools, the storage client's) have been seen to abort the
# process and turn the documented exit code into SIGABRT.
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
