"""Writes an EventLog out in the public raw formats, so that real readers can be exercised
end to end on data big enough to train on (the hand-made fixtures are a few dozen lines)."""

import os

import numpy as np


def write_retailrocket(log, path):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "events.csv"), "w") as f:
        f.write("timestamp,visitorid,event,itemid,transactionid\n")
        for s, i, t, b in zip(log.session, log.item, log.timestamp, log.is_buy):
            f.write(f"{int(t) * 1000},{s},{'addtocart' if b else 'view'},{i + 100},\n")


def write_yoochoose(log, path):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "yoochoose-clicks.dat"), "w") as fc, \
            open(os.path.join(path, "yoochoose-buys.dat"), "w") as fb:
        for s, i, t, b in zip(log.session, log.item, log.timestamp, log.is_buy):
            ts = np.datetime64(int(t), "s").astype(str) + ".000Z"
            fc.write(f"{s + 1},{ts},{i + 100},0\n")
            if b:
                fb.write(f"{s + 1},{ts},{i + 100},10,1\n")


def write_movielens_1m(log, path):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "ratings.dat"), "w") as f:
        for s, i, t in zip(log.session, log.item, log.timestamp):
            f.write(f"{s + 1}::{i + 1}::4::{int(t)}\n")
    with open(os.path.join(path, "movies.dat"), "w", encoding="latin-1") as f:
        for i in range(log.num_items):
            f.write(f"{i + 1}::Movie {i} (1999)::Drama|Comedy\n")
