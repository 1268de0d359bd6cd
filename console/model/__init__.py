"""The fleet as the console knows it: the model every view reads, and what
decides which nodes exist and which a selector means. No I/O, no Textual."""
