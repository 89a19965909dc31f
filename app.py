"""Start the chat on the default model. Until the web app lands this is the terminal chat."""
import sys

from cli import main

if __name__ == "__main__":
    sys.exit(main())
