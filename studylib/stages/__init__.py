"""One module (or package) per stage notebook: its parameters, its steps and its record."""
