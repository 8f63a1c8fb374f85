"""An iris classifier as a Serve deployment: a class, as a Ray Serve user writes one.

serve-replica imports this module in its own embedded interpreter (Debian's python3, where
python3-sklearn lives), builds Iris with the deployment's user_config and calls it per request:
  GET  <prefix>/                JSON describing the model
  POST <prefix>/predict         {"features": [[5.1, 3.5, 1.4, 0.2], ...]}
                                -> {"predictions": ["setosa", ...], "probabilities": [[...], ...]}
"""
import math

from serve import Request, Response, deployment, logger
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

MAX_ROWS = 10000


@deployment(num_replicas=1, max_concurrent_queries=8)
class Iris:
    def __init__(self, config: dict):
        # user_config, parsed: {"digits": 4} rounds probabilities to 4 digits.
        self.digits = int(config.get("digits", 4))
        iris = load_iris()
        self.model = LogisticRegression(max_iter=1000)
        self.model.fit(iris.data, iris.target)
        self.accuracy = float(self.model.score(iris.data, iris.target))
        self.samples = len(iris.data)
        self.classes = [str(name) for name in iris.target_names]
        self.features = [str(name) for name in iris.feature_names]
        logger.info("trained on %d iris samples, accuracy %.2f", self.samples, self.accuracy)

    def __call__(self, request: Request):
        if not request.path.endswith("/predict"):
            return {
                "model": "LogisticRegression(max_iter=1000)",
                "trained_on": f"sklearn.datasets.load_iris ({self.samples} samples)",
                "classes": self.classes,
                "feature_names": self.features,
                "training_accuracy": round(self.accuracy, 4),
                "predict": {"method": "POST", "path": f"{request.route_prefix}/predict",
                            "body": {"features": [[5.1, 3.5, 1.4, 0.2]]}},
            }
        if request.method != "POST":
            return Response({"error": 'use POST with {"features": [[...], ...]}'}, status=405)
        try:
            rows = self.parse_features(request)
        except ValueError as error:
            return Response({"error": str(error)}, status=400)
        probabilities = self.model.predict_proba(rows)
        return {
            "predictions": [self.classes[row.argmax()] for row in probabilities],
            "probabilities": [[round(float(p), self.digits) for p in row]
                              for row in probabilities],
        }

    def parse_features(self, request):
        """The rows to classify, or raises ValueError with a message for the caller."""
        try:
            body = request.json()
        except ValueError as error:
            raise ValueError(f"the body is not valid JSON: {error}") from None
        if not isinstance(body, dict) or "features" not in body:
            raise ValueError('expected a JSON object like {"features": [[5.1, 3.5, 1.4, 0.2]]}')
        rows = body["features"]
        if not isinstance(rows, list) or not rows:
            raise ValueError('"features" must be a non-empty list of rows')
        if len(rows) > MAX_ROWS:
            raise ValueError(f'"features" has {len(rows)} rows; at most {MAX_ROWS} per request')
        for index, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(self.features):
                raise ValueError(f"row {index} must be a list of {len(self.features)} numbers "
                                 f"({', '.join(self.features)})")
            for value in row:
                if isinstance(value, bool) or not isinstance(value, (int, float)) \
                        or not math.isfinite(value):
                    raise ValueError(f"row {index} holds {value!r}, not a finite number")
        return rows

    def check_health(self):
        # Called every health_check_period_s on the replica's control thread.
        if self.model is None:
            raise RuntimeError("the model is not loaded")

    def reconfigure(self, config: dict):
        # A new user_config, applied in place: the same replica, no retraining.
        self.digits = int(config.get("digits", 4))
