"""Reference accuracies from scikit-learn, the peer our training is measured against.

Writes scikit-learn's bundled breast-cancer dataset (shuffled with a fixed seed,
standardised on its first 80 %) as CSV to argv[1], then prints, as one JSON line, the
holdout accuracy of scikit-learn's logistic regression and decision tree trained on that
first 80 % and scored on the rest, with the scikit-learn version.
"""
import json
import sys

import numpy as np
import sklearn
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

out = sys.argv[1]
x, y = load_breast_cancer(return_X_y=True)
order = np.random.RandomState(7).permutation(len(y))
x, y = x[order], y[order]
cut = int(round(len(y) * 0.8))
x = StandardScaler().fit(x[:cut]).transform(x)
np.savetxt(out, np.column_stack([x, y]), delimiter=",", fmt="%.17g")
logistic = LogisticRegression(C=1.0, max_iter=1000).fit(x[:cut], y[:cut])
tree = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x[:cut], y[:cut])
print(json.dumps({
    "sklearn": sklearn.__version__,
    "rows": len(y),
    "train_rows": cut,
    "logistic_regression": logistic.score(x[cut:], y[cut:]),
    "decision_tree": tree.score(x[cut:], y[cut:]),
}))
