/** One label matcher of a vector selector: `name op "value"`. */
export interface LabelMatcher {
  name: string;
  op: "=" | "!=" | "=~" | "!~";
  value: string;
}

/** A vector selector found in an expression: `metric{matchers}`. */
export interface VectorSelector {
  metric: string;
  matchers: LabelMatcher[];
  /** The selector as PromQL text, for Prometheus's `match[]`. */
  text: string;
}

/** What an expression reads: its selectors and the labels it groups or matches on. */
export interface ExpressionUse {
  selectors: VectorSelector[];
  /** Labels named in `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`. */
  groupingLabels: string[];
}

const GROUPING = new Set(["by", "without", "on", "ignoring", "group_left", "group_right"]);
const KEYWORDS = new Set([
  ...["sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile"],
  ...["and", "or", "unless", "atan2", "offset", "bool", "inf", "nan"],
]);

/**
 * Lists the vector selectors and grouping labels of a PromQL expression.
 * A small tokenizer, not a full parser: enough to tell metric names from
 * functions, aggregations, keywords, label lists, strings and durations, so
 * that tests can derive the series a rule or a dashboard reads from the
 * expression itself. Selectors without a metric name are refused.
 */
export function expressionUse(expr: string): ExpressionUse {
  const selectors: VectorSelector[] = [];
  const groupingLabels: string[] = [];
  let i = 0;
  const skipSpace = () => {
    while (i < expr.length) {
      if (/\s/.test(expr[i]!)) i++;
      else if (expr[i] === "#") while (i < expr.length && expr[i] !== "\n") i++;
      else break;
    }
  };
  /** Index just past the string starting at `start` (a quote character). */
  const stringEnd = (start: number) => {
    const quote = expr[start];
    let j = start + 1;
    while (j < expr.length && expr[j] !== quote) j += expr[j] === "\\" && quote !== "`" ? 2 : 1;
    if (j >= expr.length) throw new Error(`unterminated string in: ${expr}`);
    return j + 1;
  };
  /** Index just past the bracket closing the one at `start`, skipping strings. */
  const closing = (start: number, open: string, close: string) => {
    let depth = 0;
    let j = start;
    while (j < expr.length) {
      const c = expr[j]!;
      if (c === '"' || c === "'" || c === "`") {
        j = stringEnd(j);
        continue;
      }
      if (c === open) depth++;
      if (c === close && --depth === 0) return j + 1;
      j++;
    }
    throw new Error(`unbalanced ${open}${close} in: ${expr}`);
  };
  while (i < expr.length) {
    skipSpace();
    if (i >= expr.length) break;
    const c = expr[i]!;
    if (c === '"' || c === "'" || c === "`") {
      i = stringEnd(i);
    } else if (c === "[") {
      i = closing(i, "[", "]");
    } else if (c === "{") {
      throw new Error(`a selector without a metric name is not supported: ${expr}`);
    } else if (/[0-9.]/.test(c)) {
      while (i < expr.length && /[0-9a-zA-Z._]/.test(expr[i]!)) i++;
    } else if (/[a-zA-Z_:]/.test(c)) {
      const start = i;
      while (i < expr.length && /[a-zA-Z0-9_:]/.test(expr[i]!)) i++;
      const word = expr.slice(start, i);
      skipSpace();
      const next = expr[i];
      if (GROUPING.has(word.toLowerCase())) {
        if (next === "(") {
          const end = closing(i, "(", ")");
          for (const l of expr.slice(i + 1, end - 1).split(",")) if (l.trim()) groupingLabels.push(l.trim());
          i = end;
        }
      } else if (next === "(" || KEYWORDS.has(word.toLowerCase())) {
        // A function or an aggregation (its arguments are read on), or a keyword.
      } else if (next === "{") {
        const end = closing(i, "{", "}");
        const inner = expr.slice(i + 1, end - 1);
        selectors.push({ metric: word, matchers: parseMatchers(inner), text: `${word}{${inner}}` });
        i = end;
      } else {
        selectors.push({ metric: word, matchers: [], text: word });
      }
    } else {
      i++;
    }
  }
  return { selectors, groupingLabels };
}

function parseMatchers(inner: string): LabelMatcher[] {
  const matchers: LabelMatcher[] = [];
  const re = /\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(,|$)/gy;
  let m: RegExpExecArray | null;
  while (re.lastIndex < inner.length && (m = re.exec(inner)) !== null) {
    matchers.push({ name: m[1]!, op: m[2] as LabelMatcher["op"], value: JSON.parse(`"${m[3]!}"`) as string });
  }
  if (re.lastIndex < inner.trimEnd().length) throw new Error(`cannot read the label matchers {${inner}}`);
  return matchers;
}

/** The Prometheus metric family a series name belongs to, as `# TYPE` lines name it. */
export function metricFamilies(name: string): string[] {
  const m = /^(.*)_(bucket|sum|count)$/.exec(name);
  return m ? [name, m[1]!] : [name];
}
