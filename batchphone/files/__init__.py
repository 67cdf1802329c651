"""Files: what is read and written on disk.

Input tables, result files, the journal, atomic writes and the metrics file.
"""
