"""AWS machinery both AWS stages share: the session and its errors, the stacks, the code packages.

The AWS twin of :mod:`helpers.local`. The stage twins (``helpers/<stage>/aws.py``) build on it.
"""
