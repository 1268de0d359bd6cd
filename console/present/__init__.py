"""How the model is said to a person or a script, Textual-free: the fleet
table's rows, ``status``, the words for values, sparklines."""
