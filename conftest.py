"""The package's docstring examples run with the test suite (``--doctest-modules`` in pytest.ini).

Docstrings show their examples inside Markdown code fences, as transformers' do; stdlib doctest would read the
closing fence as expected output. The parser's example pattern is widened so that a fence line ends the expected
output, as a blank line does (transformers' own doctest parser makes the same change).
"""

import doctest
import re

doctest.DocTestParser._EXAMPLE_RE = re.compile(
    r"""
    (?P<source>
        (?:^(?P<indent> [ ]*) >>>    .*)    # the PS1 line
        (?:\n           [ ]*  \.\.\. .*)*)  # PS2 lines
    \n?
    (?P<want> (?:(?![ ]*$)                  # expected output: lines that are not blank,
                 (?![ ]*>>>)                # do not start an example
                 (?![ ]*```)                # and are not a code fence
                 .+$\n?
              )*)
    """,
    re.MULTILINE | re.VERBOSE,
)
