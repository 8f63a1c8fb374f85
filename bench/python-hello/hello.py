"""The python runtime's hello: a class answering user_config.message, like builtin:hello."""


class Hello:
    def __init__(self, config):
        self.message = config.get("message", "hello world")

    def __call__(self, request):
        return self.message
