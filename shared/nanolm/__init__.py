"""nanolm: the course library of Zero to NanoChat.

Each module holds one idea that a notebook first builds from scratch in front of
the learner; the tested version lives here so later notebooks, tests and the
server share one copy. Import the modules you need: `from nanolm import artifacts`.
"""

__version__ = "0.1.0"
