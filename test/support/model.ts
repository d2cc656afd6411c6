/** The bundled model (models/sq-llava-micro): what the end-to-end tests talk to. */
import path from 'node:path';

export const BUNDLED_MODEL = path.resolve(__dirname, '../../models/sq-llava-micro');
