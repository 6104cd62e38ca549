import sys

from slicer.orchestrator.cli import main

sys.exit(main())
