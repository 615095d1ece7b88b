"""TriMPI stage 3: GRPO / DAPO on TRL's GRPOTrainer, and PolicyRollout (PoRo, paper §4.3, Eq. 3).

PolicyRollout samples, per prompt, G completions from (Q, I) and G more from (P, Q, I) with the policy P in
context, pools all 2G into one group for the advantages, then treats every completion as if it came from
(Q, I): prompt ids, images, old/reference/current log-probs, ratios and gradients are all computed on the
no-policy prompt, so policy tokens never enter the backward pass. TRL already repeats each prompt
`num_generations` times in a row, so with num_generations = 2G only the *generation* of copies G..2G-1 has to
change, plus the advantages, which come from `mpi_kit.advantages.poro_advantages` (the pooled group, in one
readable function).
With policy_rollout=False and no dynamic sampling it is exactly `GRPOTrainer`.
"""
from __future__ import annotations

import logging

import torch
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler, pad

from .compat import patch_trl_cpu_logprobs
from .data import with_policy
from .models import vision_token_ids
from .progress import quiet_stage, watch_stage
from .rollout_log import NO_POLICY, POLICY_AWARE
from .stages import STAGES, rl_stage
from .training import ResumeFix

logger = logging.getLogger("mpi_kit.rl")

patch_trl_cpu_logprobs()

# keys of TRL's generation output aligned with completion tokens: (B, C) tensors, right-padded
_COMPLETION_KEYS = ("completion_ids", "completion_mask", "old_per_token_logps", "ref_per_token_logps",
                    "sampling_per_token_logps", "tool_mask")


class EpochRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler with the same prompt order in epoch e whether the run got there uninterrupted or resumed:
    the generator is reseeded and e shuffles drawn before the epoch's own. TRL's draws one shuffle per epoch as it
    goes, so a run resumed in a later epoch replayed epoch 0's order."""

    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle and self.seed is not None:
            self.generator.manual_seed(self.seed)
            for _ in range(self.epoch):
                torch.randperm(self.num_samples, generator=self.generator)
        return super().__iter__()


class PolicyRolloutTrainer(ResumeFix, GRPOTrainer):
    """GRPOTrainer with PolicyRollout and DAPO-style dynamic sampling.

    policy_rollout: the group of num_generations = 2G holds G no-policy and G policy-aware rollouts (the row's
        `policy` / `policy_images` columns are put in context for the second half).
    policy_microbatch: None (default) generates both halves in ONE `generate` call (the no-policy prompts left-padded
        to the policy-aware ones), so PoRo pays no second decode loop; an int generates the no-policy half, then the
        policy-aware half in chunks of this many prompts (long prompts, less memory).
    dynamic_sampling_retries: regenerate the batch up to this many times; each group keeps its first sample set
        whose rewards differ; groups still all-equal after the last retry are dropped from the loss (DAPO).
    dynamic_sampling_work: stop regenerating once a step has sampled this many batches' worth of completion
        tokens beyond the first (logged), so a reward that is always 0 cannot stall a step.
    fast_rollouts: how rollouts are decoded: True / "decode" = `mpi_kit.decode`'s loop for small models, "shared" =
        `mpi_kit.rollout`'s shared prefill, False / "generate" = plain `generate`. Greedy tokens are the same on all.
    shared_prompt_logps: with the decode loop, compute the completions' log-probs with each shared prompt run once
        (`mpi_kit.logprobs`; the same values as TRL's row-by-row forward). False: TRL's forward (a benchmark baseline).
    task: the `mpi_kit.tasks.Task` whose answers the rollout log records (parsed answer, gold); ClevrPolicy if None.
    Resuming a full fine-tune reloads the checkpoint through `from_pretrained` (`ResumeFix`, transformers#43701).
    """

    def __init__(self, *args, policy_rollout: bool = False, policy_microbatch: int | None = None,
                 dynamic_sampling_retries: int = 0, dynamic_sampling_work: float = 4.0,
                 fast_rollouts: bool | str = False, shared_prompt_logps: bool = True,
                 task=None, **kwargs):
        from .tasks import get_task

        super().__init__(*args, **kwargs)
        self.task = get_task(task)
        self.fast_rollouts = fast_rollouts
        self.shared_prompt_logps = shared_prompt_logps
        if policy_rollout and self.num_generations % 2:
            raise ValueError(f"PolicyRollout pools G no-policy + G policy-aware rollouts, so num_generations must be "
                             f"even (2G); got {self.num_generations}")
        self.policy_rollout = policy_rollout
        self.policy_microbatch = policy_microbatch
        self.dynamic_sampling_retries = dynamic_sampling_retries
        self.dynamic_sampling_work = dynamic_sampling_work
        self._rows = None
        self._prompts = None

    def _get_train_sampler(self, dataset=None):
        s = super()._get_train_sampler(dataset)  # TRL's sizes; only the order across epochs is made resumable
        return EpochRepeatSampler(s.data_source, s.mini_repeat_count, s.batch_size, s.repeat_count, s.shuffle,
                                  s.seed)

    # ------------------------------------------------------------------ log-probs of the completions
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, pixel_values=None,
                                           image_grid_thw=None, num_images=None, mm_token_type_ids=None, **extra):
        """With the decode loop (`fast_rollouts` True / "decode"), each shared prompt runs once per chunk of rows
        (`mpi_kit.logprobs`); otherwise, and for models it does not handle, TRL's row-by-row forward."""
        from .decode import ROLLOUT_PATHS
        from .logprobs import shared_prompt_logps, supported

        fast = self.shared_prompt_logps and ROLLOUT_PATHS.get(self.fast_rollouts) == "decode" and not compute_aux_loss
        unwrapped = self.accelerator.unwrap_model(model)
        if not fast or not supported(unwrapped, extra_inputs=extra):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss,
                pixel_values=pixel_values, image_grid_thw=image_grid_thw, num_images=num_images,
                mm_token_type_ids=mm_token_type_ids, **extra)
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        # rows are chunked as TRL chunks them; a chunk's images are its rows' images, its patches theirs
        image_at = [0, *torch.tensor(num_images or [0] * input_ids.size(0)).cumsum(0).tolist()]
        patch_at = [0, *image_grid_thw.prod(-1).cumsum(0).tolist()] if image_grid_thw is not None else None
        for start in range(0, input_ids.size(0), batch_size):
            end = min(start + batch_size, input_ids.size(0))
            images = {}
            if pixel_values is not None and image_grid_thw is not None:
                i0, i1 = image_at[start], image_at[end]
                images = {"pixel_values": pixel_values[patch_at[i0]:patch_at[i1]],
                          "image_grid_thw": image_grid_thw[i0:i1]}
            with self.accelerator.autocast():
                lp, ent = shared_prompt_logps(
                    unwrapped, input_ids[start:end], attention_mask[start:end],
                    logits_to_keep, temperature=self.temperature, compute_entropy=compute_entropy,
                    mm_token_type_ids=None if mm_token_type_ids is None else mm_token_type_ids[start:end], **images)
            logps.append(lp)
            entropies.append(ent)
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

    # ------------------------------------------------------------------ which copies are policy-aware
    def policy_aware_mask(self, n_local: int) -> list[bool]:
        """Copy k of a group (k = global index mod 2G) is policy-aware when k >= G."""
        G2 = self.num_generations if self.model.training else self.num_generations_eval
        start = self.accelerator.process_index * n_local
        return [self.policy_rollout and (start + i) % G2 >= G2 // 2 for i in range(n_local)]

    # ------------------------------------------------------------------ generation
    def _generate(self, prompts: list):
        self._prompts = prompts
        try:
            return super()._generate(prompts)
        finally:
            self._prompts = None

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self.fast_rollouts and not self.use_vllm:  # `mpi_kit.decode` (True, "decode") or `mpi_kit.rollout`
            from .decode import rollout_generate

            fast, self.fast_rollouts = self.fast_rollouts, False
            try:
                with rollout_generate(self.accelerator.unwrap_model(self.model), fast):
                    return self._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                      has_tool_images)
            finally:
                self.fast_rollouts = fast
        if not self.policy_rollout or self._prompts is None or self._rows is None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        aware = self.policy_aware_mask(len(self._prompts))
        completions: list = [None] * len(aware)
        plain_idx = [i for i, a in enumerate(aware) if not a]
        aware_idx = [i for i, a in enumerate(aware) if a]
        def aware_prompt(i):
            return with_policy(self._prompts[i], self._rows[i].get("policy") or [],
                               self._rows[i].get("policy_images") or [])

        if self.policy_microbatch is None:  # one decode loop for both halves: a step costs ~ one GRPO step
            jobs = [(list(range(len(aware))),
                     [aware_prompt(i) if a else self._prompts[i] for i, a in enumerate(aware)])]
        else:
            jobs = [(plain_idx, [self._prompts[i] for i in plain_idx])]
            m = self.policy_microbatch
            chunks = [aware_idx[s:s + m] for s in range(0, len(aware_idx), m)]
            jobs += [(chunk, [aware_prompt(i) for i in chunk]) for chunk in chunks]
        for idx, prompts in jobs:
            if not idx:
                continue
            ids, imgs, mm = self._tokenize_prompts(prompts)
            out, _ = super()._generate_single_turn(ids, imgs, mm, num_generations, has_tool_images)
            for i, c in zip(idx, out):
                completions[i] = c
        return completions, None  # sampling log-probs came from other prompts: no importance correction

    # ------------------------------------------------------------------ rollout log columns
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        eos = set(self.eos_token_ids) | {self._tokenizer.pad_token_id}
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        self._log_completion_extra("parsed_answer", [self.task.parse(t) for t in texts])
        self._log_completion_extra("length", [len(ids) for ids in completion_ids_list])
        self._log_completion_extra("truncated", [bool(ids) and ids[-1] not in eos for ids in completion_ids_list])
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards_per_func

    # ------------------------------------------------------------------ the advantages: mpi_kit.advantages
    def _advantages(self, out: dict) -> dict:
        """Replace TRL's advantages with `mpi_kit.advantages` on the same rewards (they agree: a test checks), so
        the functions a learner reads, and may change, are the ones that train: `poro_advantages` pools each
        prompt's 2G, `group_advantages` is plain GRPO."""
        from . import advantages

        if self.multi_objective_aggregation != "sum_then_normalize":
            return out  # rewards normalised per function first: TRL's own path
        per_func = self._rewards_per_func
        rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(per_func).all(dim=1)] = torch.nan  # unscorable: no signal (advantage 0)
        n = self.num_generations if self.model.training else self.num_generations_eval
        if self.policy_rollout:
            adv = advantages.poro_advantages(rewards.cpu(), n // 2, self.scale_rewards)
        else:
            adv = advantages.group_advantages(rewards.cpu(), n, self.scale_rewards)
        local = len(out["advantages"])
        start = self.accelerator.process_index * local
        out["advantages"] = adv[start:start + local].to(out["advantages"].device)
        logged = self._logs["advantages"]  # the rollout log shows what trained
        for k, a in enumerate(adv.tolist()):
            logged[len(logged) - len(adv) + k] = a
        return out

    def _score_once(self, inputs, attempt: int):
        aware = self.policy_aware_mask(len(inputs))
        self._log_completion_extra("source", [POLICY_AWARE if a else NO_POLICY for a in aware])
        self._log_completion_extra("prompt_id", [x.get("id") for x in inputs])
        self._log_completion_extra("scene_id", [x.get("scene_id") for x in inputs])
        self._log_completion_extra("gold", [x.get(self.task.gold_column) for x in inputs])
        self._log_completion_extra("attempt", [attempt] * len(inputs))
        self._rows = inputs
        try:
            return self._advantages(super()._generate_and_score_completions(inputs))
        finally:
            self._rows = None

    def _generate_and_score_completions(self, inputs):
        out = self._score_once(inputs, 0)
        if not self.dynamic_sampling_retries or not self.model.training:
            return out
        return self._dynamic_sampling(inputs, out)

    # ------------------------------------------------------------------ DAPO dynamic sampling
    def _group_ids(self, n: int) -> list[int]:
        start = self.accelerator.process_index * n
        return [(start + i) // self.num_generations for i in range(n)]

    def _dynamic_sampling(self, inputs, out):
        """Keep, per group, the first attempt whose rewards are not all equal; drop groups that never get one."""
        groups = self._group_ids(len(inputs))
        filled = {g: False for g in groups}
        choice = [0] * len(inputs)  # attempt whose rows each position takes
        attempts = [out]

        def update(k: int, res) -> None:
            for g in filled:
                rows = [i for i, gi in enumerate(groups) if gi == g]
                if not filled[g] and res["advantages"][rows].abs().max() > 1e-6:
                    filled[g] = True
                    for i in rows:
                        choice[i] = k

        def tokens(res) -> float:  # completion tokens sampled, summed over processes (all decide alike)
            return float(self.accelerator.gather(res["completion_mask"].sum().reshape(1).float()).sum())

        update(0, out)
        retries, capped = 0, False
        budget, spent = self.dynamic_sampling_work * tokens(out), 0.0
        while retries < self.dynamic_sampling_retries:
            missing = torch.tensor([float(not all(filled.values()))], device=self.accelerator.device)
            if self.accelerator.gather(missing).sum() == 0:  # every process is full
                break
            if spent >= budget:
                capped = True
                break
            retries += 1
            attempts.append(self._score_once(inputs, retries))
            update(retries, attempts[-1])
            spent += tokens(attempts[-1])
        dropped = [i for i, g in enumerate(groups) if not filled[g]]
        merged = self._merge_attempts(attempts, choice, dropped)
        n_dropped = torch.tensor([len({groups[i] for i in dropped})], device=self.accelerator.device,
                                 dtype=torch.float)
        mode = "train"
        if capped:
            logger.warning(f"DAPO dynamic sampling: step {self.state.global_step + 1} stopped regenerating after "
                           f"{retries} retries ({spent:.0f} completion tokens, cap {budget:.0f} = "
                           f"{self.dynamic_sampling_work:g} batches' worth); {len({groups[i] for i in dropped})} "
                           f"group(s) still had equal rewards and are left out of this step's loss")
        self._metrics[mode]["dynamic_sampling/capped"].append(float(capped))
        self._metrics[mode]["dynamic_sampling/retries"].append(float(retries))
        self._metrics[mode]["dynamic_sampling/dropped_groups"].append(self.accelerator.gather(n_dropped).sum().item())
        return merged

    def _merge_attempts(self, attempts: list[dict], choice: list[int], dropped: list[int]) -> dict:
        """Row i of the result comes from attempts[choice[i]]. Prompts and images are the same in every attempt;
        completion-aligned tensors are right-padded to a common width. Dropped rows get an empty loss mask."""
        base = dict(attempts[0])
        if len(attempts) > 1:
            width = max(a["completion_ids"].size(1) for a in attempts)
            for key in _COMPLETION_KEYS:
                if key not in base or base[key] is None:
                    continue
                value = 0 if key != "completion_ids" else self._tokenizer.pad_token_id
                rows = [attempts[k][key][i] for i, k in enumerate(choice)]
                base[key] = pad(rows, padding_value=value, padding_side="right").to(base[key].device)
                if base[key].size(1) < width:
                    extra = base[key].new_full((base[key].size(0), width - base[key].size(1)), value)
                    base[key] = torch.cat([base[key], extra], dim=1)
            base["advantages"] = torch.stack([attempts[k]["advantages"][i] for i, k in enumerate(choice)])
            P = base["prompt_ids"].size(1)
            for key in ("token_type_ids", "mm_token_type_ids"):
                if key in base:
                    base[key] = torch.cat([base[key][:, :P], base[key].new_zeros((base[key].size(0), width))], dim=1)
        if dropped:
            base["completion_mask"] = base["completion_mask"].clone()
            base["completion_mask"][dropped] = 0
        mask = base["completion_mask"] * base["tool_mask"] if "tool_mask" in base else base["completion_mask"]
        base["num_items_in_batch"] = self.accelerator.gather(mask.sum()).sum()
        return base


# ---------------------------------------------------------------------------------------------- running

ALGOS = tuple(dict.fromkeys(s.algo for s in STAGES.values() if s.kind == "rl"))  # grpo, dapo


def rollout_batch(settings, group: int, accumulation: int) -> dict:
    """TRL batch sizes for `settings.rollout_prompts` prompts per rollout batch, each with its `group` completions
    (G, or 2G under PolicyRollout), updated in `settings.updates_per_rollout` optimizer steps: every arm samples the
    same prompts; only the group differs. {} when rollout_prompts is 0 (the recipe's batch sizes as written)."""
    from .training import StageError

    if not settings.rollout_prompts:
        return {}
    completions = settings.rollout_prompts * group
    micro, left = divmod(completions, settings.updates_per_rollout * accumulation)
    if left or not micro:
        raise StageError(f"rollout_prompts x group = {completions} completions do not split into "
                         f"updates_per_rollout ({settings.updates_per_rollout}) x gradient_accumulation_steps "
                         f"({accumulation}) equal micro-batches; choose rollout_prompts so that they do")
    return {"per_device_train_batch_size": micro, "generation_batch_size": completions}


def check_group_size(G: int, policy_rollout: bool) -> None:
    """GRPO's advantage compares a completion with the others of its prompt's group: one alone has none to
    compare with. PolicyRollout's group is 2G (G no-policy + G policy-aware), so G = 1 still gives a pair."""
    from .training import StageError

    if G < (1 if policy_rollout else 2):
        raise StageError(f"num_generations (G) must be >= {1 if policy_rollout else 2}, got {G}: a group of one "
                         f"completion has no advantage (its reward minus the group mean is 0)"
                         + ("" if policy_rollout else "; PolicyRollout allows G = 1, a group of 2"))


def rl_trainer(recipe="tiny", data_dir=None, out="runs/rl", algo: str = "grpo", policy_rollout: bool = False, *,
               init=None, max_steps=None, limit=None, save_steps=None, callbacks=(), progress=False,
               num_generations: int | None = None, policy_microbatch: int | None = None, dataset=None,
               train_vision=False, task=None, reward_funcs=None, reward_weights=None,
               fast_rollouts: bool | None = None, **overrides):
    """(trainer, processor, info) for GRPO or DAPO, with or without PolicyRollout, on the rl train split.

    Presets come from the recipe's `grpo` / `dapo` sections (paper: GRPO clip 0.2/0.3 with KL 0.01 to the
    reference; DAPO clip 0.2/0.28, no KL, token-level loss, dynamic sampling with 20 retries). G is the
    recipe's num_generations (or `num_generations`); PolicyRollout samples 2G per prompt, G of them with the
    policy in context. The rewards are the task's (`mpi_kit.tasks`: `task`, else the one that built `data_dir`,
    else ClevrPolicy); `reward_funcs`/`reward_weights` replace them. fast_rollouts: None = the recipe's."""
    from trl import GRPOConfig

    from .data import DataError, load_kit_data, require_columns
    from .tasks import get_task, task_of
    from .training import freeze_vision, load_stage_model, stage_recipe, trainer_kwargs
    from .timing import stage_facts

    stage = rl_stage(algo, policy_rollout)  # the registry: its recipe section and data kind
    recipe = stage_recipe(recipe, init, **overrides)
    settings = getattr(recipe, stage.section)
    task = get_task(task) if task is not None or data_dir is None else task_of(data_dir)  # before the data loads
    ds = dataset if dataset is not None else load_kit_data(data_dir, stage.data)["train"]
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    reward_funcs = list(reward_funcs or task.reward_funcs)
    reward_weights = list(reward_weights or task.reward_weights)
    if task.gold_column not in ds.column_names and dataset is None and data_dir is not None:
        built = task_of(data_dir)
        if built is not task:  # e.g. ClevrPolicy's rewards asked for on GTAPolicy data
            raise DataError(f"RL ({stage.title}): {data_dir} holds {built.title} data, but the rewards asked for are "
                            f"{task.title}'s (they compare with its {task.gold_column!r} column, which this data "
                            f"lacks). Use the data's own task (`--reward auto` or `--reward {built.name}`).")
    needed = ["prompt", "images", task.gold_column] + (["policy", "policy_images"] if policy_rollout else [])
    require_columns(ds, needed, f"RL ({stage.title})")
    if policy_rollout and not any(ds[0]["policy"] or []):
        raise ValueError("PolicyRollout needs the policy of every row in its `policy` column; this dataset's is "
                         "empty. Build it with `mpi-kit data --kinds rl`.")
    G = num_generations or settings.num_generations
    check_group_size(G, policy_rollout)
    model, processor = load_stage_model(recipe, init)
    frozen = 0 if train_vision else freeze_vision(model)
    fast_rollouts = settings.fast_rollouts if fast_rollouts is None else fast_rollouts
    kw = trainer_kwargs(recipe, settings, out, max_steps, save_steps, progress)
    kw.pop("dynamic_sampling_retries", None)
    kw["num_generations"] = 2 * G if policy_rollout else G
    kw.update(rollout_batch(settings, kw["num_generations"], kw["gradient_accumulation_steps"]))
    args = GRPOConfig(**kw, reward_weights=reward_weights, log_completions=True, num_completions_to_print=0,
                      generation_kwargs={"suppress_tokens": vision_token_ids(processor)})
    trainer = PolicyRolloutTrainer(model=model, args=args, train_dataset=ds, processing_class=processor,
                                   reward_funcs=reward_funcs, callbacks=list(callbacks),
                                   policy_rollout=policy_rollout, policy_microbatch=policy_microbatch,
                                   dynamic_sampling_retries=settings.dynamic_sampling_retries,
                                   dynamic_sampling_work=settings.dynamic_sampling_work,
                                   fast_rollouts=fast_rollouts, task=task)
    watch_stage(trainer, progress)  # one bar (progress=True) and a summary line, not a log dict per step
    info = {"recipe": recipe, "algo": algo, "task": task.name, "policy_rollout": policy_rollout, "G": G,
            "fast_rollouts": fast_rollouts,
            "group_size": kw["num_generations"], "scale_rewards": args.scale_rewards,
            "data": str(data_dir) if data_dir else None, "init": str(init) if init else None,
            "num_examples": len(ds), "vision_frozen_params": frozen,
            "reward_weights": dict(zip(("format", "accuracy"), reward_weights)),
            "reward_funcs": [getattr(f, "__name__", str(f)) for f in reward_funcs],
            **stage_facts(algo, recipe, args, ds, processor, policy_rollout=policy_rollout)}  # precision, time
    return trainer, processor, info


@quiet_stage
def run_rl(recipe="tiny", data_dir=None, out="runs/rl", algo: str = "grpo", policy_rollout: bool = False, *,
           resume=True, **kw) -> dict:
    """Run GRPO/DAPO (optionally with PolicyRollout) into `out`, resuming from its last checkpoint; the rollout
    log is `out/completions/completions_*.parquet`. Returns the summary written to summary.json."""
    from .training import run_settings, run_stage_in

    name = rl_stage(algo, policy_rollout).name
    if kw.get("num_generations") is not None:
        check_group_size(int(kw["num_generations"]), policy_rollout)
    return run_stage_in(out, name, run_settings(name, recipe, data_dir, **kw),
                        lambda: rl_trainer(recipe, data_dir, out, algo, policy_rollout, **kw), resume)
