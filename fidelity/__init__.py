"""The mechanics of the fidelity report (evaluate.py): style statistics and where they fall between
others and the person, attribution, failure rates, a privacy audit, plots. Pure functions over turns
(lists of message strings); nothing here loads a model or imports a program."""
