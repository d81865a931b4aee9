import sys

from advmem.cli import main

sys.exit(main())
