"""Which model, auxiliary model and samples each ACF job reads, in the parallel scheme and the sequential one.

LM_0 is the base model; R_None is a fresh R (zero head, R = 0.5); S_i are scored samples. The parallel scheme (ACF,
Sec. 3.3 and Fig. 2) lags R by a round so that a round's three jobs depend only on the round before:

    round 0        S_0 ~ LM_0, then R_0 = fit(R_None, S_0)                 the one sequential step
    round i >= 1   sample_i    S_i ~ LM_{i-1}
                   train_R_i   R_i = fit(R_{i-1}, S_{i-1})                 S_{i-1} came from LM_{i-2}
                   train_LM_i  LM_i = fit(LM_{i-1}; corpus, KL to q* of R_{i-1}, on S_{i-1})

R_1 is R_0 (S_0 has trained it already), and the last round only trains the LM, whose result is the model. The
sequential variant runs round i >= 1 as a chain: S_i ~ LM_{i-1}, then R_i = fit(R_{i-1}, S_i), then LM_i against R_i.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    num_rounds: int  # N: LM_1 .. LM_N are trained; LM_N is the result
    parallel: bool = True

    def sample_rounds(self) -> list[int]:
        return list(range(self.num_rounds)) if self.parallel else list(range(1, self.num_rounds + 1))

    def r_rounds(self) -> list[int]:
        return [0, *range(2, self.num_rounds)] if self.parallel else list(range(1, self.num_rounds + 1))

    def lm_rounds(self) -> list[int]:
        return list(range(1, self.num_rounds + 1))

    def sample_from(self, i: int) -> int:
        """The LM that S_i is sampled from (0: the base model)."""
        return max(i - 1, 0)

    def r_of(self, k: int) -> int:
        """The R job whose output stands for R_k (in the parallel scheme R_1 is R_0)."""
        return 0 if self.parallel and k == 1 else k

    def r_init(self, i: int) -> int | None:
        """The R that R_i starts from (None: a fresh one)."""
        first = 0 if self.parallel else 1
        return None if i == first else self.r_of(i - 1)

    def r_data(self, i: int) -> int:
        """The samples R_i is fit on."""
        return max(i - 1, 0) if self.parallel else i

    def lm_r(self, i: int) -> int:
        """The R that LM_i's KL term uses."""
        return self.r_of(i - 1) if self.parallel else i

    def lm_samples(self, i: int) -> int:
        """The samples whose prefixes LM_i's KL term runs on."""
        return i - 1 if self.parallel else i

    def jobs(self) -> list[tuple[str, int]]:
        """Every job as (kind, round) in an order that runs each after its inputs: what `acf.train` runs in turn."""
        rounds = range(0 if self.parallel else 1, self.num_rounds + 1)
        kinds = [("sample", self.sample_rounds()), ("r", self.r_rounds()), ("lm", self.lm_rounds())]
        return [(kind, i) for i in rounds for kind, members in kinds if i in members]

    def concurrent(self, i: int) -> int:
        """How many jobs of round i run side by side (round 0 and the sequential variant run one at a time)."""
        if not self.parallel or i == 0:
            return 1
        return sum(kind_i == i for _, kind_i in self.jobs())
