// A serial console's output shown as text: the terminal's screen control (cursor moves,
// character sets, resets, carriage returns) means nothing in a <pre>.
const SCREEN_CONTROL = /\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1bc|\r/g;

export function plainText(output: string): string {
  return output.replace(SCREEN_CONTROL, "");
}
