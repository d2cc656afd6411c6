/**
 * Curio's Discord application commands: `/describe`, `/ask`, `/quiz` and the message
 * context-menu commands "Describe image" and "Quiz me". The same definitions serve the bot
 * (option names) and `curio discord register` (which uploads them, globally or to one guild).
 */
import {
  ApplicationCommandType,
  ApplicationIntegrationType,
  ContextMenuCommandBuilder,
  InteractionContextType,
  REST,
  Routes,
  SlashCommandAttachmentOption,
  SlashCommandBuilder,
  SlashCommandStringOption,
  type RESTPostAPIApplicationCommandsJSONBody,
} from 'discord.js';

export const COMMAND = {
  describe: 'describe',
  ask: 'ask',
  quiz: 'quiz',
  describeMessage: 'Describe image',
  quizMessage: 'Quiz me',
} as const;

export const OPTION = {
  image: 'image',
  url: 'url',
  detail: 'detail',
  question: 'question',
  questions: 'questions',
} as const;

export interface CommandDefinitionOptions {
  /** Longest accepted question (config limits.max_text_chars). */
  maxQuestionLength?: number;
  /** Most quiz questions (config limits.max_quiz_questions, capped at 5 here). */
  maxQuizQuestions?: number;
}

const CONTEXTS = [InteractionContextType.Guild, InteractionContextType.BotDM];

/** The command definitions, as the JSON Discord's API takes. */
export function commandDefinitions(o: CommandDefinitionOptions = {}): RESTPostAPIApplicationCommandsJSONBody[] {
  const maxQuestion = Math.min(o.maxQuestionLength ?? 1000, 6000);
  const maxRounds = Math.max(1, Math.min(o.maxQuizQuestions ?? 5, 5));

  const imageOption = (opt: SlashCommandAttachmentOption) => opt.setName(OPTION.image).setDescription('The image (PNG, JPEG, WebP or GIF)');
  const urlOption = (opt: SlashCommandStringOption) =>
    opt.setName(OPTION.url).setDescription('…or a link to an image on Discord (cdn.discordapp.com)').setMaxLength(1000);

  const base = (name: string, description: string) =>
    new SlashCommandBuilder().setName(name).setDescription(description).setContexts(CONTEXTS).setIntegrationTypes(ApplicationIntegrationType.GuildInstall);

  const describe = base(COMMAND.describe, 'Describe an image')
    .addAttachmentOption(imageOption)
    .addStringOption(urlOption)
    .addStringOption((opt) =>
      opt
        .setName(OPTION.detail)
        .setDescription('One sentence (brief) or a detailed description')
        .addChoices({ name: 'brief', value: 'brief' }, { name: 'detailed', value: 'detailed' }),
    );

  // Discord wants required options first: the question comes before the (optional) image.
  const ask = base(COMMAND.ask, 'Ask a question about an image')
    .addStringOption((opt) => opt.setName(OPTION.question).setDescription('What you want to know about the image').setRequired(true).setMaxLength(maxQuestion))
    .addAttachmentOption(imageOption)
    .addStringOption(urlOption);

  const quiz = base(COMMAND.quiz, 'The model asks itself questions about an image, and answers them')
    .addAttachmentOption(imageOption)
    .addStringOption(urlOption)
    .addIntegerOption((opt) =>
    opt.setName(OPTION.questions).setDescription(`How many questions (1–${maxRounds}, default ${Math.min(3, maxRounds)})`).setMinValue(1).setMaxValue(maxRounds),
  );

  const menu = (name: string) =>
    new ContextMenuCommandBuilder().setName(name).setType(ApplicationCommandType.Message).setContexts(CONTEXTS).setIntegrationTypes(ApplicationIntegrationType.GuildInstall);

  return [describe.toJSON(), ask.toJSON(), quiz.toJSON(), menu(COMMAND.describeMessage).toJSON(), menu(COMMAND.quizMessage).toJSON()];
}

export interface RegisterOptions extends CommandDefinitionOptions {
  token: string;
  applicationId: string;
  /** Register in one guild (instant; for development) instead of globally. */
  guildId?: string;
  /** Discord API base (tests point it at a fake). */
  restApi?: string;
}

export interface RegisteredCommand {
  id: string;
  name: string;
  type: number;
}

/** Uploads the command definitions (a bulk overwrite: commands no longer defined are removed). */
export async function registerDiscordCommands(o: RegisterOptions): Promise<RegisteredCommand[]> {
  const rest = new REST(o.restApi ? { api: o.restApi } : {}).setToken(o.token);
  const route = o.guildId ? Routes.applicationGuildCommands(o.applicationId, o.guildId) : Routes.applicationCommands(o.applicationId);
  const result = (await rest.put(route, { body: commandDefinitions(o) })) as RegisteredCommand[];
  return result.map((c) => ({ id: c.id, name: c.name, type: c.type }));
}
