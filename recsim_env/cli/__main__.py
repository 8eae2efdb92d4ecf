"""`python -m recsim_env.cli` runs the llm-usersim command line."""

import sys

from recsim_env.cli import main

sys.exit(main())
