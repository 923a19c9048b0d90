// Sizes as people type them: a number and a binary unit.
export const SIZE_UNITS = { MiB: 2 ** 20, GiB: 2 ** 30, TiB: 2 ** 40 } as const;
export type SizeUnit = keyof typeof SIZE_UNITS;
