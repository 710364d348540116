import sys

from .cli import command

if __name__ == "__main__":   # python -m ultraseg; importing the module (pydoc) runs nothing
    sys.exit(command())
