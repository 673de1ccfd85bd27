"""Start HMAR Studio in the browser: ``python launch.py`` (the same as ``hmar-studio``).

Everything lives in :mod:`app.launcher` (flags: ``python launch.py --help``).
"""

from app.launcher import main

if __name__ == "__main__":
    main()
