"""An async handler that sleeps, and counts how many of its calls overlap."""
import asyncio


class Sleeper:
    def __init__(self, config):
        self.seconds = float(config.get("seconds", 1))
        self.running = 0
        self.most = 0

    async def __call__(self, request):
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.running -= 1
        return {"most_at_once": self.most}
