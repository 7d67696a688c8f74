// placeholder: the DARTS op set and strategy (being written)
