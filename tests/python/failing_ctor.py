class Model:
    def __init__(self, config):
        self.load()

    def load(self):
        raise FileNotFoundError("weights.bin is missing on purpose")
