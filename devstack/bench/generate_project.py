"""Generate the benchmark dbt project: one 1,000-row seed, N views, a not_null test per view.

Shape: ten layers of N/10 models. Layer 0 reads the seed; a model in layer k reads the model
ten places before it and, for every third model, the one eleven places before it, so the
dependency graph is ten levels deep and has joins, like a real project's staging -> marts flow.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import yaml

SEED_ROWS = 1000
LAYERS = 10


def model_sql(i: int, width: int) -> str:
    if i < width:
        return f"select id, category, amount * {i + 1} as amount\nfrom {{{{ ref('bench_seed') }}}}\n"
    first = f"m_{i - width:04d}"
    if i % 3 == 0 and i - width - 1 >= 0:
        second = f"m_{i - width - 1:04d}"
        return (
            "select a.id, a.category, a.amount + b.amount as amount\n"
            f"from {{{{ ref('{first}') }}}} as a\n"
            f"inner join {{{{ ref('{second}') }}}} as b on a.id = b.id\n"
        )
    return f"select id, category, amount + 1 as amount\nfrom {{{{ ref('{first}') }}}}\n"


def generate(
    dest: Path,
    models: int,
    name: str,
    schema: str,
    execution_mode: str | None = None,
    test_behavior: str | None = None,
) -> Path:
    """Write the project to ``dest`` (replacing it) and return its path."""
    if models < LAYERS or models % LAYERS:
        raise ValueError(f"--models must be a positive multiple of {LAYERS}, got {models}")
    width = models // LAYERS
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "models").mkdir(parents=True)
    (dest / "seeds").mkdir()
    (dest / "dbt_project.yml").write_text(
        yaml.safe_dump(
            {
                "name": name,
                "version": "1.0.0",
                "config-version": 2,
                "profile": name,
                "model-paths": ["models"],
                "seed-paths": ["seeds"],
                "models": {name: {"+materialized": "view"}},
            },
            sort_keys=False,
        )
    )
    rows = ["id,category,amount"] + [f"{i},c{i % 7},{i % 97}" for i in range(1, SEED_ROWS + 1)]
    (dest / "seeds" / "bench_seed.csv").write_text("\n".join(rows) + "\n")
    specs = []
    for i in range(models):
        (dest / "models" / f"m_{i:04d}.sql").write_text(model_sql(i, width))
        specs.append({"name": f"m_{i:04d}", "columns": [{"name": "id", "data_tests": ["not_null"]}]})
    (dest / "models" / "_models.yml").write_text(
        yaml.safe_dump({"version": 2, "models": specs}, sort_keys=False)
    )
    platform = {"schema": schema, "schedule": "none", "tags": ["benchmark"]}
    if execution_mode:
        platform["execution_mode"] = execution_mode
    if test_behavior:
        platform["test_behavior"] = test_behavior
    (dest / "platform.yml").write_text(yaml.safe_dump(platform))
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--name", default="bench_project")
    args = parser.parse_args()
    print(generate(args.dest, args.models, args.name, schema=args.name))


if __name__ == "__main__":
    main()
