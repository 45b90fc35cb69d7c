"""The test suite: a package, so that its modules share ``tests.helpers`` and ``tests.dense``.

numpy's OpenBLAS runs one thread in the tests and in every process they start (set here, as the
package is imported, before anything imports numpy; a value already set is kept). Its thread
pool costs far more than it saves on the suite's tiny eigenproblems, such as the Ritz values of
every Lanczos step: on a busy 2-core machine the quick tests of tests/curvature took 31 to 41 s
of CPU with one thread against 78 to 97 s with OpenBLAS's default. torch's intra-op threads are
set to one in tests/conftest.py.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
