"""editdecay: do knowledge edits survive fine-tuning?"""

__version__ = "0.1.0"
