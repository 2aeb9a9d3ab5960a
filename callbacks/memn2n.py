"""Where a Memory Network looks: the paper's Table 2 ("Where was the apple after the garden?"), live during training.

For a fixed set of validation questions, every N epochs (global rank zero only), ``MemN2NAttention`` logs a table
with one row per memory sentence: the story's sentences in order, the supporting facts marked, the attention p of
every hop on every sentence, the question, the true and the predicted answer. W&B gets it as a ``wandb.Table``,
other loggers as a CSV file with the run; the same is drawn as an image (sentences against hops).
"""



from callbacks.media import EveryNEpochs, evaluating, figure_to_image, log_image, log_table, pyplot


def attention_rows(pl_module, datamodule, num_questions: int) -> list[dict]:
    """One dict per memory sentence of the first ``num_questions`` validation questions, oldest sentence first."""
    batch = datamodule.fixed_batch(num_questions, device=pl_module.device)
    with evaluating(pl_module):
        logits, attention = pl_module(batch)
    predicted, attention = logits.argmax(-1).cpu(), attention.float().cpu()
    batch = type(batch)(*(t.cpu() for t in batch))
    rows = []
    for b in range(len(predicted)):
        n = int(batch.n_memories[b])
        supports = set(batch.supports[b].tolist())
        question = datamodule.sentence(batch.queries[b])
        answer, guess = datamodule.vocab[int(batch.answers[b])], datamodule.vocab[int(predicted[b])]
        for slot in reversed(range(n)):  # slot 0 is the newest statement
            rows.append({"question_id": b, "sentence": datamodule.sentence(batch.stories[b, slot]),
                         "support": slot in supports, **{f"hop{k + 1}": float(attention[b, k, slot])
                                                         for k in range(attention.shape[1])},
                         "question": question, "answer": answer, "predicted": guess})
    return rows


def attention_figure(rows: list[dict]):
    """For every question, its sentences (supporting facts marked *) against the hops, p as grey levels."""
    plt = pyplot()
    questions = list(dict.fromkeys(r["question_id"] for r in rows))
    hops = [key for key in rows[0] if key.startswith("hop")]
    heights = [max(1.2, 0.22 * sum(r["question_id"] == q for r in rows) + 0.6) for q in questions]
    fig, axes = plt.subplots(len(questions), 1, figsize=(7, sum(heights)), dpi=100, squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, q in zip(axes[:, 0], questions):
        story = [r for r in rows if r["question_id"] == q]
        ax.imshow([[r[h] for h in hops] for r in story], cmap="Greys", vmin=0, vmax=1, aspect="auto")
        ax.set_yticks(range(len(story)), [("* " if r["support"] else "") + r["sentence"] for r in story],
                      fontsize=7)
        ax.set_xticks(range(len(hops)), hops, fontsize=7)
        ax.tick_params(length=0)
        first = story[0]
        mark = "right" if first["predicted"] == first["answer"] else "WRONG"
        ax.set_title(f"{first['question']}?  answer: {first['answer']}, predicted: {first['predicted']} ({mark})",
                     fontsize=8, loc="left")
    fig.tight_layout()
    return fig


class MemN2NAttention(EveryNEpochs):
    """Every ``every_n_epochs`` validation epochs: the attention of every hop for ``num_questions`` fixed
    validation questions (the first ones of the validation split), as a table and an image."""

    def __init__(self, every_n_epochs: int = 10, num_questions: int = 4):
        super().__init__(every_n_epochs)
        self.num_questions = num_questions

    def draw(self, trainer, pl_module):
        rows = attention_rows(pl_module, trainer.datamodule, self.num_questions)
        log_table(trainer, "media/memn2n_attention", rows)
        log_image(trainer, "media/memn2n_attention_image", figure_to_image(attention_figure(rows)),
                  caption=f"epoch {trainer.current_epoch}")
